"""The simulated fleet's /metrics (and /readyz, /livez) and its process usage: its size and what its agents did.

`flotilla sim` gives the sim process a port (`--metrics-port`); the figures are the ones its JSON status line
prints (`Fleet.counts`), so the two never disagree and nothing is added to the agents' paths.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Mapping

from flotilla_runtime.health import HealthServer
from flotilla_runtime.metrics import Family, Registry, Sample

Counts = Callable[[], Mapping[str, int]]
# (name, type, help, key in the counts)
FIGURES = (
    ("flotilla_sim_clusters_approved", "gauge", "Simulated clusters joined and approved.", "clusters_approved"),
    ("flotilla_sim_agents_ready", "gauge", "Simulated node-agents ready for commands.", "agents_ready"),
    ("flotilla_sim_links_connected", "gauge", "Bus connections of the simulated fleet that are up.", "links_connected"),
    ("flotilla_sim_steps_executed_total", "counter", "Node steps the simulated agents executed.", "steps_executed"),
    ("flotilla_sim_dead_letters_total", "counter", "Agent commands the simulated agents gave up.", "dead_lettered"),
    ("flotilla_sim_heartbeats_sent_total", "counter", "Heartbeats the simulated nodes sent.", "heartbeats_sent"),
    ("flotilla_sim_reconnects_total", "counter", "Times a bus connection of the fleet was rebuilt.", "reconnects"),
)


def registry(clusters: int, nodes_per_cluster: int, counts: Counts) -> Registry:
    """The sim's figures: its size (as started) and `counts()` at each scrape."""
    metrics = Registry()
    metrics.gauge_fn("flotilla_sim_clusters", "Simulated clusters (the fleet's size).", lambda: clusters)
    metrics.gauge_fn("flotilla_sim_nodes", "Simulated nodes, all clusters.", lambda: clusters * nodes_per_cluster)

    def collect() -> list[Family]:
        now = counts()  # once per scrape: it sums over every agent
        return [Family(name, kind, help, [Sample({}, now[key])]) for name, kind, help, key in FIGURES]

    metrics.collector(collect, [name for name, *_ in FIGURES])
    return metrics


async def serve(port: int, clusters: int, nodes_per_cluster: int, counts: Counts) -> HealthServer:
    """Serve /metrics on 127.0.0.1:`port` (0: any free port; the server's `port` says which)."""
    metrics = registry(clusters, nodes_per_cluster, counts)
    server = HealthServer("127.0.0.1", port, lambda: (True, "ok"), metrics.render)
    await server.start()
    return server


def usage() -> dict[str, float]:
    """This process's CPU seconds and resident memory (MiB)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/statm") as statm:
        rss_pages = int(statm.read().split()[1])
    return {
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "rss_mib": round(rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1),
    }
