"""Benchmarks: one orchestrator process versus one script per bot (scripts/baseline_bot.py).

Layout:

    cli.py          argument parsing, scenario selection, the results file
    scenarios.py    the five scenarios (concurrency, overhead, memory + start-up, fairness)
    runner.py       child processes: the sandbox helper, the orchestrator, the baseline fleet
    sandbox_proc.py the helper process: both loopback servers with timestamp hooks (JSON-lines RPC)
    procfs.py       CPU time and memory of a process from /proc
    report.py       targets, the stdout table, the PNG chart
    instructions.py --instructions: the orchestrator's instructions per answered !chat under callgrind
    callgrind.py    counting a process's instructions window by window (also used by scripts/bench_transport)

Run it with ``scripts/bench`` (see ``scripts/bench --help`` and docs/benchmarks.md).
"""
