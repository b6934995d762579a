import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python was still starting vitlens
    print("vitlens: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
