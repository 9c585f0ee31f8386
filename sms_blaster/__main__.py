from sms_blaster.launch import main

main()
