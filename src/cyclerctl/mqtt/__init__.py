"""cyclerctl.mqtt"""
