"""Fleet mode: several ``orchestrator run`` processes, on several machines, run one set of bots,
each bot on exactly one of them, coordinated through Redis (bots.yaml's ``fleet:`` section).

    placement.py   which node should run each bot (rendezvous hashing over the live nodes)
    leases.py      the Redis keys and Lua scripts: leases with fencing tokens, heartbeats, the fleet's view
    node.py        FleetCoordinator: this node's loop (heartbeat, renew, place, drain, take) and watchdog
    quotas.py      FleetQuotas: the bots' and users' quotas and spend caps, counted in Redis for every node
    connection.py  the Redis client (short timeouts), URLs shown without their password
"""
