"""ROS-free core of ate_ros: models, policy, ATE method, runtime logic; never imports rclpy."""
