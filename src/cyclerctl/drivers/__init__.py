"""cyclerctl.drivers"""
