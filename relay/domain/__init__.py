"""Business rules that tools compute with: prices, places, calendars.

Pure functions over data files the business edits; no I/O beyond reading those files,
no database, no network.
"""
