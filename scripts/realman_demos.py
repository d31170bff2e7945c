#!/usr/bin/env python3
"""Run RealMan's own Python demos (RM_API2 `Demo/RMDemo_Python/RMDemo_*`), each with the SDK it
bundles, against the project's controller emulator, and report every SDK call's return code.

    .venv/bin/python scripts/realman_demos.py PATH/TO/RM_API2 [--demo SimpleProcess ...]

Nothing is fetched: PATH is a local checkout (or copy) of RealManRobot/RM_API2. Each demo runs in
its own Python process, from its own `src` folder (where its relative paths, `../data/...`, resolve) as `python main.py`, with
two differences the hardware makes necessary and the demo cannot see: the controller addresses
it hard-codes (192.168.1.18 and .19, port 8080) are mapped onto emulators on loopback
(`rm_create_robot_arm` is given the emulator's address), and every method of the bundled
`RoboticArm` is wrapped to record its return code. The emulators are RM75-B controllers (the
robot's arms; MovejCANFD: RM65-B, see DEMOS), started fresh for each demo.

A demo passes when it exits normally, every SDK call returned 0 (a handle with an id for
`rm_create_robot_arm`) and it printed no error or failure (the demos catch their exceptions
and print them). Exit status: 0 when every demo passed, 1 otherwise, 2 for a bad PATH.
`--json FILE` writes the calls, the return codes and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: The demos this script knows: how many controllers each one talks to, and their model. The
#: robot's arms are RM75-B; MovejCANFD replays drag-taught points from a file, and RM_API2
#: ships that file for RM65/RM63 and ECO65 only, so it runs against an RM65-B.
DEMOS = {"SimpleProcess": (1, "RM75-B"), "Moves": (1, "RM75-B"), "DoubleRoboticArm": (2, "RM75-B"),
         "MovejCANFD": (1, "RM65-B"), "Gripper": (1, "RM75-B")}
#: What RealMan's demos print when something went wrong, an exception they caught included
#: ("Error in main: ...", "movej motion failed, Error code: 1").
FAILURE_OUTPUT = re.compile(r"\b(error|failed|fail)\b", re.IGNORECASE)
#: The controller addresses RealMan's demos use (rm_docs dual-arm demo: .18 and .19).
DEMO_ADDRESSES = ("192.168.1.18", "192.168.1.19")
DEMO_TIMEOUT_S = 300.0


# ---- the child: one demo, its SDK calls recorded ------------------------------------------------
def _child(main_py: Path, addresses: Dict[str, List[object]], record: Path) -> None:
    """Run one demo's `src/main.py` in this process with `RoboticArm` instrumented."""
    root = main_py.parent.parent
    sys.path[:0] = [str(main_py.parent), str(root)]
    os.chdir(main_py.parent)  # where the demos' relative paths (../data/...) resolve
    from src.Robotic_Arm import rm_robot_interface as sdk  # the SDK the demo bundles

    calls: List[Dict[str, object]] = []
    lock = threading.Lock()  # DoubleRoboticArm calls from two threads

    def code_of(result: object) -> int:
        if isinstance(result, bool):
            return 0 if result else 1
        if isinstance(result, int):
            return result
        if isinstance(result, tuple) and result and isinstance(result[0], int):
            return result[0]
        if isinstance(result, dict) and isinstance(result.get("return_code"), int):
            return int(result["return_code"])
        if hasattr(result, "id"):  # rm_robot_handle
            return 0 if int(result.id) > 0 else -1
        return 0

    def wrap(name: str, method):
        def call(self, *args, **kwargs):
            if name == "rm_create_robot_arm" and args and str(args[0]) in addresses:
                ip, port = addresses[str(args[0])]
                args = (ip, port, *args[2:])
            result = method(self, *args, **kwargs)
            with lock:
                calls.append({"call": name, "code": code_of(result)})
                record.write_text(json.dumps({"calls": calls, "sdk": str(sdk.rm_api_version())}))
            return result
        return call

    for name in dir(sdk.RoboticArm):
        if name.startswith("rm_") and callable(getattr(sdk.RoboticArm, name)):
            setattr(sdk.RoboticArm, name, wrap(name, getattr(sdk.RoboticArm, name)))
    record.write_text(json.dumps({"calls": calls, "sdk": str(sdk.rm_api_version())}))
    import runpy
    sys.argv = [str(main_py)]
    runpy.run_path(str(main_py), run_name="__main__")


# ---- the parent: emulators, one process per demo -------------------------------------------------
def _free_udp_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_demo(folder: Path, name: str) -> Dict[str, object]:
    from ate_ros.sim.realman_emulator import RealManEmulator

    main_py = folder / "src" / "main.py"
    arms, model = DEMOS[name]
    emulators = []
    try:
        addresses: Dict[str, List[object]] = {}
        for i in range(arms):
            ip = f"127.0.0.{2 + i}"
            emulator = RealManEmulator(model=model, ip=ip, tcp_port=0, push_port=_free_udp_port())
            emulator.start()
            emulators.append(emulator)
            addresses[DEMO_ADDRESSES[i]] = [ip, emulator.tcp_port]
        with tempfile.TemporaryDirectory() as tmp:
            record = Path(tmp) / "calls.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(main_py),
                   "--addresses", json.dumps(addresses), "--record", str(record)]
            try:
                proc = subprocess.run(cmd, cwd=main_py.parent, capture_output=True, text=True,
                                      timeout=DEMO_TIMEOUT_S)
                rc, out = proc.returncode, proc.stdout + proc.stderr
            except subprocess.TimeoutExpired as e:
                rc, out = -9, f"timed out after {DEMO_TIMEOUT_S:.0f} s\n{e.stdout or ''}"
            data = json.loads(record.read_text()) if record.exists() else {"calls": [], "sdk": "?"}
        commands = sorted({c.name for e in emulators for c in e.commands()})
    finally:
        for emulator in emulators:
            emulator.stop()
    calls = data["calls"]
    failed = [c for c in calls if c["code"] != 0]
    complaints = [line.strip() for line in out.splitlines() if FAILURE_OUTPUT.search(line)]
    return {"demo": name, "model": model, "exit_code": rc, "sdk": data["sdk"], "calls": calls,
            "failed": failed, "complaints": complaints,
            "passed": rc == 0 and bool(calls) and not failed and not complaints,
            "controller_commands": commands, "output": out}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rm_api2", nargs="?", help="a local RM_API2 checkout")
    parser.add_argument("--demo", action="append", choices=sorted(DEMOS),
                        help="one demo (repeatable; default: all)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--verbose", action="store_true", help="print each demo's output")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--addresses", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(Path(args.child), json.loads(args.addresses), Path(args.record))
        return 0
    if not args.rm_api2:
        parser.error("the path of a local RM_API2 checkout is required")
    base = Path(args.rm_api2) / "Demo" / "RMDemo_Python"
    if not base.is_dir():
        print(f"{args.rm_api2}: no Demo/RMDemo_Python here: not an RM_API2 checkout", file=sys.stderr)
        return 2
    revision = "unknown"
    try:
        revision = subprocess.run(["git", "-C", args.rm_api2, "rev-parse", "HEAD"], capture_output=True,
                                  text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    print(f"RM_API2 {args.rm_api2} (revision {revision}); emulated controllers on loopback")
    results = []
    for name in args.demo or list(DEMOS):
        folder = base / f"RMDemo_{name}"
        if not (folder / "src" / "main.py").is_file():
            print(f"{name}: {folder}/src/main.py not found", file=sys.stderr)
            return 2
        result = run_demo(folder, name)
        results.append(result)
        counts: Dict[str, int] = {}
        for c in result["calls"]:
            counts[c["call"]] = counts.get(c["call"], 0) + 1
        verdict = "PASS" if result["passed"] else "FAIL"
        print(f"{verdict} {name}: {result['model']}, SDK {result['sdk']}, exit {result['exit_code']}, "
              f"{len(result['calls'])} SDK calls, {len(result['failed'])} not 0")
        print("     " + ", ".join(f"{k} x{v}" for k, v in counts.items()))
        for c in result["failed"]:
            print(f"     {c['call']} returned {c['code']}")
        for line in result["complaints"]:
            print(f"     the demo printed: {line}")
        if args.verbose or not result["passed"]:
            print("     output:\n" + "\n".join("       " + line for line in
                                               str(result["output"]).splitlines()[-40:]))
    if args.json:
        Path(args.json).write_text(json.dumps({"rm_api2": str(args.rm_api2), "revision": revision,
                                               "results": results}, indent=1))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
