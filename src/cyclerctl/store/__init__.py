"""cyclerctl.store"""
