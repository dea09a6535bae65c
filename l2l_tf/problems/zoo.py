"""Small Keras models used as optimizees by the shipped configs."""

import keras


def mnist_convnet() -> keras.Model:
    """A small sigmoid conv net on flat 784-pixel MNIST images (11,738
    parameters): 5x5 conv, 8 channels, stride 2; then a softmax layer."""
    return keras.Sequential([
        keras.Input((784,)),
        keras.layers.Reshape((28, 28, 1)),
        keras.layers.Conv2D(8, 5, strides=2, activation="sigmoid"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ], name="mnist_convnet")


def cifar_convnet(num_classes: int = 10) -> keras.Model:
    """The paper's CIFAR-10 conv net (Andrychowicz et al. 2016, Sec. 3.3).

    On [32, 32, 3] images: three blocks of a 5x5 convolution with 16
    channels ("same" padding, no bias: batch norm's offset takes its place),
    batch norm, ReLU and 2x2 max-pooling (32 -> 16 -> 8 -> 4), then a fully
    connected layer of 32 ReLU units and a softmax output layer.

    Layers are named conv_<i>, bn_<i>, fc_0 and logits, so that rules can
    tell the convolutional parameters (conv_*, bn_*) from the fully
    connected ones (fc_0, logits). Trainable parameters with 10 classes:
    conv 5*5*3*16 + 2 * 5*5*16*16 = 14,000; batch norm 3 * (16 + 16) = 96;
    fc 4*4*16*32 + 32 = 8,224; output 32*10 + 10 = 330; 22,650 in all (plus
    96 non-trainable moving statistics).
    """
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for i in range(3):
        x = keras.layers.Conv2D(16, 5, padding="same", use_bias=False,
                                name=f"conv_{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu", name="fc_0")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax",
                                 name="logits")(x)
    return keras.Model(inputs, outputs, name="cifar_convnet")
