"""aivarda.evaluation"""
