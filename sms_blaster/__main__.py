from sms_blaster.cli import main

main()
