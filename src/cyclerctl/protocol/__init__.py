"""cyclerctl.protocol"""
