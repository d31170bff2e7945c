"""rclpy nodes: thin adapters between ROS messages and ate_core objects."""
