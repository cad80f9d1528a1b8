"""
twistd plugins for promtwist: C{twistd promproxy-proxy} and C{twistd promproxy-agent}.

Only strings here: twistd imports every plugin module on every run, so the real
modules are named, not imported.
"""

from twisted.application.service import ServiceMaker

promproxyProxy = ServiceMaker(
    "promtwist proxy",
    "promtwist.proxy.tap",
    "Prometheus-facing proxy that relays scrapes to agents behind firewalls.",
    "promproxy-proxy",
)
promproxyAgent = ServiceMaker(
    "promtwist agent",
    "promtwist.agent.tap",
    "Agent inside the firewall that dials the proxy and scrapes local targets.",
    "promproxy-agent",
)
