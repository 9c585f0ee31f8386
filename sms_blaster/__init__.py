"""sms_blaster: bulk SMS from the command line, paced just under the provider's limit."""

__version__ = "0.1.0"
