"""Hardware drivers (no rclpy): RealMan arms through RealMan's SDK, cameras."""
