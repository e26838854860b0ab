"""cyclerctl.sim"""
