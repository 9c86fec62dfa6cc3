from tokencodec.cli import main

main()
