"""What tools, the console and the CLI share: customers, quotes, bookings, messaging, knowledge."""
