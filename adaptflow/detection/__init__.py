"""Object detection: the same stages as classification (pretrain, fine-tune, evaluate, register)
for two detector families, Ultralytics YOLO and torchvision Faster R-CNN, on YOLO-format data."""
