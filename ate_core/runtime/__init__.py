"""Robot-side logic shared by the ROS nodes and offline evaluation; pure, time passed in."""
