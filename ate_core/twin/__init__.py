"""The simulated twin of the dual-arm robot on MuJoCo, without ROS.

``config`` (the scene as data; no MuJoCo), ``model`` (the MuJoCo model built from the robot's
URDF), ``twin`` (:class:`~ate_core.twin.twin.Twin`: targets in, physics stepped, state and
camera frames out) and ``gl`` (the offscreen OpenGL backend, settled before MuJoCo is imported).
This package is the only one that imports MuJoCo; importing it does not, its ``model`` does.
"""
