"""RealMan arm models, MDH forward kinematics, the dual-arm layout and the URDF built from them."""
