from yolov3.commands.cli import main

main()
