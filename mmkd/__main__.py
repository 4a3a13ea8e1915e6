from mmkd.cli import main

main()
