"""cyclerctl.report"""
