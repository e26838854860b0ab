"""cyclerctl.engine"""
