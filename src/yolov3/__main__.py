from yolov3.cli import main

main()
