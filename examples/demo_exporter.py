"""
A stand-in for a real exporter, for the quick start: serves prometheus_client's
process and Python metrics plus one counter on http://127.0.0.1:9100/metrics.
"""

import time

from prometheus_client import Counter, start_http_server

ticks = Counter("promtwist_demo_ticks", "Seconds the demo exporter has been running")

if __name__ == "__main__":
    start_http_server(9100, addr="127.0.0.1")
    while True:
        time.sleep(1)
        ticks.inc()
