"""``ate_urdf``: write (or check) the robot's URDF generated from its config file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ate_core.config import ConfigError
from ate_core.robot.config import load_config
from ate_core.robot.from_config import layout_from_config
from ate_core.robot.urdf import bimanual_urdf


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ate_urdf", description=__doc__)
    parser.add_argument("--config", default="config/bimanual.yaml", help="robot config YAML")
    parser.add_argument("-o", "--output", help="write here (default: stdout)")
    parser.add_argument("--check", metavar="URDF",
                        help="exit 1 if this file differs from what the config generates")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"ate_urdf: {e}", file=sys.stderr)
        return 2
    xml = bimanual_urdf(layout_from_config(cfg), robot_name=cfg.robot_name)
    if args.check:
        current = Path(args.check).read_text(encoding="utf-8") if Path(args.check).exists() else ""
        if current != xml:
            print(f"ate_urdf: {args.check} is out of date; regenerate with "
                  f"`ate_urdf --config {args.config} -o {args.check}`", file=sys.stderr)
            return 1
        return 0
    if args.output:
        Path(args.output).write_text(xml, encoding="utf-8")
    else:
        sys.stdout.write(xml)
    return 0


if __name__ == "__main__":
    sys.exit(main())
