"""``python -m MedSREnhanceLib.bench``: the command recorded in benchmark results and model cards (the harness
lives in ``evaluation``; ``medsr bench`` takes the same arguments)."""
from .evaluation.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
