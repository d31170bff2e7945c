"""The OpenGL the twin renders its cameras with, chosen before MuJoCo is imported.

MuJoCo binds its offscreen context type when it is imported (``mujoco.gl_context`` reads
``MUJOCO_GL`` once) and PyOpenGL binds its platform on its own first import, so a process cannot
switch from EGL to OSMesa after EGL failed. The choice is therefore made up front: a
``MUJOCO_GL`` the user set is taken as given; otherwise EGL (Mesa's libEGL: headless, no X
server) and then OSMesa (pure software) are each tried in a short child process that renders
one frame, and the first that works is written to ``MUJOCO_GL``, so the child processes a node
or a benchmark starts inherit the answer instead of probing again. When neither works, MuJoCo
is imported with rendering disabled: physics still runs, and :func:`require_rendering` raises
:class:`TwinRenderError` with what each backend said.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import ModuleType
from typing import Dict, Optional

__all__ = ["BACKENDS", "TwinRenderError", "import_mujoco", "require_rendering", "backend"]

#: Tried in this order when ``MUJOCO_GL`` is not set.
BACKENDS = ("egl", "osmesa")

_DISABLED = ("disable", "disabled", "off", "false", "0")
# A backend counts as working only if a whole frame renders: EGL can initialise on a machine
# whose driver then fails to make a context current.
_PROBE = """
import sys
try:
    import mujoco
    m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=".1"/></worldbody></mujoco>')
    r = mujoco.Renderer(m, 16, 16)
    r.update_scene(mujoco.MjData(m))
    r.render()
    r.close()
except Exception as e:
    print(" ".join(f"{type(e).__name__}: {e}".split()))
    sys.exit(1)
"""
_PROBE_TIMEOUT_S = 60.0

_failures: Dict[str, str] = {}


class TwinRenderError(RuntimeError):
    """No offscreen OpenGL could be had, or a frame was asked for that the renderer cannot
    give; the message names the backend and what failed."""


def _probe(name: str) -> Optional[str]:
    """None if ``name`` renders a frame in a child process, else the reason it does not."""
    env = dict(os.environ, MUJOCO_GL=name, PYOPENGL_PLATFORM=name)
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                             text=True, timeout=_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"no frame within {_PROBE_TIMEOUT_S:.0f} s"
    if out.returncode == 0:
        return None
    if out.stdout.strip():
        return out.stdout.strip()
    lines = [line for line in out.stderr.splitlines() if line.strip()]  # a crash, not a raise
    return lines[-1] if lines else f"exit status {out.returncode}"


def import_mujoco() -> ModuleType:
    """``mujoco``, imported after ``MUJOCO_GL`` was settled (see the module docstring).

    A ``MUJOCO_GL`` set by the user to a backend this machine lacks makes MuJoCo's own import
    fail; that is reported as :class:`TwinRenderError`, since the user asked for it.
    """
    if "mujoco" not in sys.modules and not os.environ.get("MUJOCO_GL"):
        for name in BACKENDS:
            reason = _probe(name)
            if reason is None:
                os.environ["MUJOCO_GL"] = name
                os.environ.setdefault("PYOPENGL_PLATFORM", name)
                break
            _failures[name] = reason
        else:
            os.environ["MUJOCO_GL"] = "disable"
    try:
        import mujoco
    except Exception as e:  # MuJoCo imports the GL bindings MUJOCO_GL names, which may fail
        raise TwinRenderError(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}: MuJoCo cannot be "
                              f"imported with this OpenGL ({type(e).__name__}: {e}); unset "
                              f"MUJOCO_GL to let the twin choose") from None
    return mujoco


def backend() -> str:
    """The ``MUJOCO_GL`` the imported MuJoCo uses (``glfw`` when it was imported unset)."""
    return os.environ.get("MUJOCO_GL", "").strip().lower() or "glfw"


def require_rendering() -> None:
    """Raise :class:`TwinRenderError` if MuJoCo was imported without an offscreen context.

    MuJoCo itself would not raise here: without a current context its renderer aborts the
    process, so the twin checks before it creates one.
    """
    name = backend()
    if name not in _DISABLED:
        return
    if _failures:
        tried = "; ".join(f"{n}: {why}" for n, why in _failures.items())
        raise TwinRenderError(f"no offscreen OpenGL for the twin's cameras ({tried}); install "
                              f"Mesa's libEGL (libegl1) or OSMesa (libosmesa6), or set MUJOCO_GL")
    raise TwinRenderError(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')} disables rendering; "
                          f"set it to one of {', '.join(BACKENDS)} before the twin is imported")
