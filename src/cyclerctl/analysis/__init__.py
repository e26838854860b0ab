"""cyclerctl.analysis"""
