"""Cartesian paths (line, arc, spline) and the timing of joint paths under limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ate_core.robot.cartesian_path import (PathError, TimedJointPath, Trapezoid, arc, line,
                                           pose_from_xyz_rpy, spline, xyz_rpy_from_pose)


def pose(x, y, z, rx=math.pi, ry=0.0, rz=0.0):
    return pose_from_xyz_rpy([x, y, z, rx, ry, rz])


def steps(poses):
    return np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)


def test_pose_round_trips_through_realman_xyz_rpy():
    values = [0.3, -0.1, 0.25, 3.0, 0.2, -1.1]
    np.testing.assert_allclose(xyz_rpy_from_pose(pose_from_xyz_rpy(values)), values, atol=1e-12)
    with pytest.raises(PathError, match="6 finite numbers"):
        pose_from_xyz_rpy([0.3, 0, 0.3, math.nan, 0, 0])


def test_a_line_is_straight_evenly_spaced_and_slerps_the_rotation():
    a, b = pose(0.3, 0.0, 0.3), pose(0.2, 0.05, 0.25, rz=0.5)
    path = line(a, b, step_m=0.005)
    p = path.poses[:, :3, 3]
    direction = (b[:3, 3] - a[:3, 3]) / np.linalg.norm(b[:3, 3] - a[:3, 3])
    off = (p - a[:3, 3]) - np.outer((p - a[:3, 3]) @ direction, direction)
    assert np.abs(off).max() < 1e-12
    assert path.length_m == pytest.approx(np.linalg.norm(b[:3, 3] - a[:3, 3]))
    assert steps(path.poses).max() <= 0.005 + 1e-12 and np.ptp(steps(path.poses)) < 1e-12
    np.testing.assert_array_equal(path.poses[0], a)
    np.testing.assert_array_equal(path.poses[-1], b)
    assert path.rotation_rad == pytest.approx(0.5)


def test_an_arc_runs_on_the_circle_through_via_to_the_end_and_loops_add_full_turns():
    a, via, b = pose(0.3, 0.0, 0.3), pose(0.25, 0.05, 0.3), pose(0.25, -0.05, 0.3)
    once = arc(a, via, b)
    center, radius = np.array([0.25, 0.0, 0.3]), 0.05
    r = np.linalg.norm(once.poses[:, :3, 3] - center, axis=1)
    assert np.abs(r - radius).max() < 2e-6  # resampled from a polyline: the wire's 1 um
    # From a through via to b counter-clockwise about +z: three quarters of the circle.
    assert once.length_m == pytest.approx(1.5 * math.pi * radius, rel=1e-4)
    closest = np.linalg.norm(once.poses[:, :3, 3] - via[:3, 3], axis=1).min()
    assert closest < 0.005
    twice = arc(a, via, b, loops=2)
    assert twice.length_m == pytest.approx(once.length_m + 2 * 2 * math.pi * radius, rel=1e-4)
    np.testing.assert_array_equal(twice.poses[-1], b)
    with pytest.raises(PathError, match="one line"):
        arc(a, pose(0.25, 0.0, 0.3), pose(0.2, 0.0, 0.3))


def test_a_spline_passes_through_every_point_and_fewer_than_three_make_straight_lines():
    points = [pose(0.3, 0.0, 0.3), pose(0.3, 0.1, 0.33), pose(0.2, 0.3, 0.23), pose(0.2, 0.25, 0.04),
              pose(0.1, 0.3, 0.14)]
    path = spline(points, step_m=0.005)
    track = path.poses[:, :3, 3]
    for p in points:
        assert np.linalg.norm(track - p[:3, 3], axis=1).min() < 0.003
    assert steps(path.poses).max() <= 0.005 + 1e-9
    polyline = spline(points[:3])
    assert polyline.length_m == pytest.approx(
        sum(np.linalg.norm(points[i + 1][:3, 3] - points[i][:3, 3]) for i in range(2)), rel=1e-9)


def test_the_trapezoid_starts_and_ends_at_rest_within_its_caps():
    for speed, accel in ((0.5, 2.0), (5.0, 2.0)):  # cruise, and a triangle
        profile = Trapezoid(speed, accel)
        t = np.linspace(0.0, profile.duration_s, 2001)
        s = np.array([profile.s_at(x) for x in t])
        assert s[0] == 0.0 and s[-1] == 1.0 and np.all(np.diff(s) >= -1e-15)
        v = np.diff(s) / np.diff(t)
        assert v.max() <= speed * (1 + 1e-6) and v[0] < 0.01 and v[-1] < 0.01
        assert np.abs(np.diff(v) / np.diff(t)[1:]).max() <= accel * 1.01


def test_a_timed_joint_path_keeps_every_joint_and_the_tool_under_their_caps():
    q = np.stack([np.linspace(0, 1.0, 50), np.linspace(0, -0.2, 50) ** 2])  .T  # [50, 2]
    vmax, amax = np.array([0.5, 0.5]), np.array([2.0, 2.0])
    path = TimedJointPath(q, vmax, amax, length_m=0.4, tcp_speed=(0.1, 1.0))
    t = np.linspace(0, path.duration, 4001)
    x = np.array([path.position_at(s) for s in t])
    v = np.abs(np.diff(x, axis=0) / np.diff(t)[:, None])
    assert np.all(v <= vmax * 1.001)
    assert path.duration >= 0.4 / 0.1  # the tool's 0.1 m/s over 0.4 m
    np.testing.assert_array_equal(path.position_at(path.duration + 1), q[-1])
    np.testing.assert_array_equal(path.position_at(0.0), q[0])
    still = TimedJointPath(np.zeros((2, 3)), np.ones(3), np.ones(3))
    assert still.duration == 0.0
