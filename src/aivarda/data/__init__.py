"""aivarda.data"""
