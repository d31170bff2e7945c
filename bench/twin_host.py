"""The twin host's timing: does its physics keep real time while the cameras are drawn?

    .venv/bin/python bench/twin_host.py [--seconds 10] [--variants] [--json out.json]

Each case runs a ``TwinHost`` as ``ate_twin`` runs it (both arms' controller emulators on the
MuJoCo twin, 5 ms physics ticks against absolute deadlines, the cameras drawn by its render
process into shared memory) in this process, for ``--seconds`` after a start-up second, with
the arms holding at home: a tick costs the same physics whatever the arms do. Reported per
case: the real-time factor, the ticks that ran a push unit (5 ms) or more late of the ~200 per
second, the worst lateness, each camera's rate and drawing time, and the CPU of the physics
process and of the renderer.

Cases: no cameras; the three cameras at the config's ``sim.camera_*`` (320x240 at 15 fps);
at 640x480 and 30 fps. ``--variants`` adds the 320x240 case with the renderer at normal
priority and with Mesa's default rasterizer threads, to show what the defaults of
``RenderSettings`` buy.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import time
from typing import Dict, List, Optional, Tuple

from ate_core.robot.config import BimanualConfig, load_config, simulated
from ate_core.twin.model import TwinRobot
from ate_core.twin.twin import Twin
from ate_ros.sim.twin_host import TwinHost
from ate_ros.sim.twin_render import RenderSettings
from common import CpuMeter, free_port, header, print_header, run_main, write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Not measured: the render process loads, makes its GL contexts and draws its first frames.
WARM_UP_S = 1.0


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    #: (width, height, fps) of every camera; None: physics only.
    cameras: Optional[Tuple[int, int, float]]
    render: RenderSettings = RenderSettings()


def cases(cfg: BimanualConfig, variants: bool) -> List[Case]:
    sim = (cfg.sim.camera_width, cfg.sim.camera_height, cfg.sim.camera_fps)
    small = f"3 x {sim[0]}x{sim[1]} at {sim[2]:g} fps"
    out = [Case("none", None), Case(small, sim), Case("3 x 640x480 at 30 fps", (640, 480, 30.0))]
    if variants:
        defaults = RenderSettings()
        out += [Case(f"{small}, renderer not niced", sim,
                     dataclasses.replace(defaults, nice=0)),
                Case(f"{small}, Mesa's default threads", sim,
                     dataclasses.replace(defaults, gl_threads=None)),
                Case(f"{small}, neither", sim, RenderSettings(nice=0, gl_threads=None))]
    return out


def robot(cfg: BimanualConfig, case: Case) -> BimanualConfig:
    """The sim robot with every camera at the case's size and rate (or none)."""
    twin_on = dataclasses.replace(cfg, sim=dataclasses.replace(cfg.sim, twin=True))
    cameras = simulated(twin_on).cameras
    if case.cameras is None:
        return dataclasses.replace(cfg, cameras={})
    width, height, fps = case.cameras
    return dataclasses.replace(cfg, cameras={
        name: dataclasses.replace(cam, width=width, height=height, fps=fps)
        for name, cam in cameras.items()})


def run(cfg: BimanualConfig, case: Case, seconds: float) -> Dict[str, object]:
    cfg = robot(cfg, case)
    twin = Twin(TwinRobot.from_config(cfg))
    endpoints = {side: {"ip": "127.0.0.1", "tcp_port": 0,
                        "push_port": free_port(kind=socket.SOCK_DGRAM)}
                 for side in ("left", "right")}
    host = TwinHost(cfg, twin, endpoints, cameras=bool(cfg.cameras), render=case.render)
    with host:
        host.wait_for_cameras()
        time.sleep(WARM_UP_S)
        pids = {"physics process": os.getpid()}
        if host.renderer_pid is not None:
            pids["renderer"] = host.renderer_pid
        cpu = CpuMeter(pids)
        cpu.start()
        host.restart_stats()
        time.sleep(seconds)
        stats, cameras = host.stats(), host.camera_stats()
        used = cpu.percent()
        renderer = host.renderer_state()
    if renderer is not None and renderer.phase == "failed":
        raise RuntimeError(f"{case.name}: the renderer failed: {renderer.reason}")
    wall = stats.wall_time_s
    return {
        "real_time_factor": stats.real_time_factor, "ticks": stats.ticks,
        "late_ticks": stats.late_ticks, "skipped_ticks": stats.skipped_ticks,
        "worst_lateness_ms": stats.worst_lateness_s * 1e3, "wall_s": wall,
        "cameras": {name: {"fps": c.frames / wall, "dropped": c.dropped,
                           "render_ms": c.render_s / max(c.frames, 1) * 1e3}
                    for name, c in cameras.items()},
        "cpu_percent": used, "render": dataclasses.asdict(case.render),
    }


def print_results(head: Dict[str, str], seconds: float, results: Dict[str, dict]) -> None:
    print_header(head)
    print(f"\n{seconds:g} s per case, both arms' controllers, 5 ms ticks"
          f"\n  {'cameras':<44}{'RTF':>7}{'late':>7}{'of':>7}{'worst':>9}"
          f"{'camera fps':>13}{'draw':>8}{'physics':>9}{'render':>8}"
          f"\n  {'':<44}{'':>7}{'ticks':>7}{'ticks':>7}{'(ms)':>9}{'mean, min':>13}{'(ms)':>8}"
          f"{'CPU %':>9}{'CPU %':>8}")
    for name, r in results.items():
        cams = r["cameras"]
        rates = [c["fps"] for c in cams.values()]
        fps = f"{sum(rates) / len(rates):.1f}, {min(rates):.1f}" if cams else "-"
        draw = f"{max(c['render_ms'] for c in cams.values()):.1f}" if cams else "-"
        cpu = r["cpu_percent"]
        render_cpu = f"{cpu['renderer']:.0f}" if "renderer" in cpu else "-"
        print(f"  {name:<44}{r['real_time_factor']:7.3f}{r['late_ticks']:7d}{r['ticks']:7d}"
              f"{r['worst_lateness_ms']:9.1f}{fps:>13}{draw:>8}"
              f"{cpu['physics process']:9.0f}{render_cpu:>8}")
    print("\n  machine busy (% of all cores): " + ", ".join(
        f"{r['cpu_percent']['machine']:.0f}" for r in results.values()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per case")
    parser.add_argument("--config", default=os.path.join(REPO, "config", "bimanual.yaml"))
    parser.add_argument("--variants", action="store_true",
                        help="also the renderer at normal priority and Mesa's default threads")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    head = header("bench/twin_host.py: the twin's physics clock while its cameras are drawn")
    cfg = load_config(args.config)
    results: Dict[str, dict] = {}
    for case in cases(cfg, args.variants):
        print(f"{case.name} ...", file=sys.stderr, flush=True)
        results[case.name] = run(cfg, case, args.seconds)
    print_results(head, args.seconds, results)
    if args.json:
        write_json(args.json, head, results)
    return 0


if __name__ == "__main__":
    run_main(main, "twin_host: interrupted")
