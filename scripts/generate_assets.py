#!/usr/bin/env python3
"""Regenerate every model the project authors (robot, gripper CAD model, task objects) under assets/.

Usage: python scripts/generate_assets.py [--out assets]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim.assets_gen.robot import write_robot_assets  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "assets")
    args = parser.parse_args(argv)
    written = write_robot_assets(args.out / "robot")
    try:
        from sim.assets_gen.objects import write_object_assets
    except ImportError:
        pass
    else:
        written += write_object_assets(args.out / "objects")
    for path in written:
        print(path.relative_to(args.out.parent) if path.is_relative_to(args.out.parent) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
