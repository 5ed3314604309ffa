"""Record in every bundled model's card the content hash of each volume it trained or was validated on.

    python benchmarks/card_hashes.py ../shared/data/MANIFEST.json ../extra_data/MANIFEST.json

`medsr bench` marks a volume "held out" unless the card lists it; by id alone, a training volume passed as a plain
file (the MNI template from nilearn's folder, say) would pass for held out. With ``training.volume_hashes`` (id ->
``core.io.content_hash`` of the volume as read: voxels and geometry) the bench recognises it under any name.
Volumes not found in the given manifests are left out and named on stderr. `medsr train` records them itself;
this fills in cards written before it did.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from MedSREnhanceLib.evaluation.cases import find_volumes  # noqa: E402
from MedSREnhanceLib.core.io import content_hash  # noqa: E402
from MedSREnhanceLib.models import registry  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifests", nargs="+", help="MANIFEST.json files naming the training volumes")
    args = parser.parse_args()
    for spec in registry.LEARNED:
        card_path = registry.WEIGHTS_DIR / spec.card
        card = json.loads(card_path.read_text())
        training = card.get("training") if isinstance(card.get("training"), dict) else None
        if training is None:
            continue
        ids = list(dict.fromkeys((training.get("volumes") or []) + (training.get("validation_volumes") or [])))
        found = {bv.id: content_hash(str(bv.path)) for bv in find_volumes(args.manifests, ids)}
        missing = [i for i in ids if i not in found]
        if missing:
            print(f"{spec.name}: not in the manifests, no hash: {', '.join(missing)}", file=sys.stderr)
        training["volume_hashes"] = found
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        print(f"{spec.name}: {len(found)} volume hashes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
