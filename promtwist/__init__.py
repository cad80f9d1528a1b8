"""
promtwist: Prometheus scrapes through firewalls and NAT, on Twisted.

A proxy outside the firewall is scraped by Prometheus like any target; an agent
inside dials out to it once and answers its scrape requests.
"""

from promtwist._version import __version__

__all__ = ["__version__"]
