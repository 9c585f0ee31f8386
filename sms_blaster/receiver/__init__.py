"""The webhook receiver: delivery receipts and inbound messages, checked and recorded."""
