-- The groups the fleet disruption rule (flotilla_runtime.disruption) judges disrupted now, so a restart keeps
-- the verdict (and lifts the FleetDisruption freezes when the fleet recovers, not before).
CREATE TABLE fleet_disruption (
    label  TEXT NOT NULL,
    value  TEXT NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (label, value)
)
