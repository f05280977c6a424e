"""`python -m bench [SCENARIO] [args]`: run one scenario (default: `server`).

`python -m bench --help` lists the scenarios; `python -m bench SCENARIO --help`
shows one scenario's options. With no scenario named (or the first argument an
option), the default `server` scenario runs with all the arguments, as before.
"""

from __future__ import annotations

import sys

from . import scenarios


def usage() -> str:
    lines = [
        "usage: python -m bench [SCENARIO] [args ...]",
        "",
        "Runs one benchmark scenario (bench/scenarios/<SCENARIO>.py); with no SCENARIO,",
        f"`{scenarios.DEFAULT}`. `python -m bench SCENARIO --help` shows its options;",
        "nox: `nox -s bench -- SCENARIO [args ...]`. See docs/BENCHMARKS.md.",
        "",
        "scenarios:",
    ]
    for name in scenarios.names():
        default = " (default)" if name == scenarios.DEFAULT else ""
        lines.append(f"  {name:16} {scenarios.summary(name)}{default}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv and not argv[0].startswith("-"):
        name, rest = argv[0], argv[1:]
        if name not in scenarios.names():
            print(f"python -m bench: no scenario {name!r}\n\n{usage()}", file=sys.stderr)
            return 2
    else:
        name, rest = scenarios.DEFAULT, argv
    # argparse in a scenario names itself after argv[0].
    sys.argv = [f"python -m bench {name}", *rest]
    result = scenarios.entry(name)(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
