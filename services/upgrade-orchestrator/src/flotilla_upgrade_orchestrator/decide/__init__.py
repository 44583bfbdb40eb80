"""`decide(view, fact, now) -> Decision`: the one place the orchestrator decides.

Every input (a user's command, an agent's report, a health or inventory event, the clock, a lease taken
over) becomes a fact; `decide` looks at one rollout as it is (`View`) and returns intents (what to record,
emit and send, in order) and what to look at next. It is pure: it reads the view and never changes it;
the engine's applier (applier.py) carries the intents out in the caller's transaction and calls `decide`
again for each follow-up until nothing is left. The allowed transitions are machine.py's tables, checked
when a move is applied.

    facts.py     what decide is told          intents.py   what it asks for
    view.py      what it sees                 progress.py  moving a rollout on (gates, waves, starts, steps)
    clusters.py  a cluster settling, waiting for its inventory, reopened by a retry
    world.py     reports, health, inventory, the clock, a takeover
    commands.py  the user's commands
"""

from __future__ import annotations

from datetime import datetime

from flotilla_upgrade_orchestrator.decide import clusters, commands, progress, world
from flotilla_upgrade_orchestrator.decide.facts import (
    Abort,
    Advance,
    Approve,
    ClusterHealth,
    Decision,
    Fact,
    Gates,
    Inventory,
    LiftBudgetFreeze,
    NodeHealth,
    Pause,
    Report,
    Resume,
    Retry,
    Rollback,
    Skip,
    Stall,
    Started,
    TakeOver,
    Tick,
)
from flotilla_upgrade_orchestrator.decide.view import View

__all__ = ["Decision", "View", "decide"]


def decide(view: View, fact: Fact, now: datetime) -> Decision:
    """What to do about `fact` in the rollout `view` shows, at `now`."""
    match fact:
        case Advance():
            return progress.advance(view, fact, now)
        case Gates():
            return Decision(progress.gates(view, now))
        case LiftBudgetFreeze(reason):
            return clusters.lift_budget_freeze(view, reason)
        case Stall():
            return Decision(progress.check_stall(view, now))
        case Report():
            return world.report(view, fact, now)
        case NodeHealth():
            return world.node_health(view, fact, now)
        case ClusterHealth():
            return world.cluster_health(view, fact, now)
        case Inventory():
            return world.node_inventory(view, fact, now)
        case Tick():
            return world.tick(view, now)
        case TakeOver():
            return world.take_over(view, fact)
        case Started():
            return commands.started(view, fact)
        case Pause():
            return commands.pause(view, fact)
        case Resume():
            return commands.resume(view, fact)
        case Abort():
            return commands.abort(view, fact)
        case Approve():
            return commands.approve(view, fact, now)
        case Retry():
            return commands.retry(view, fact, now)
        case Skip():
            return commands.skip(view, fact)
        case Rollback():
            return commands.rollback(view, fact)
    raise TypeError(f"decide got {type(fact).__name__}, which is not a fact")
