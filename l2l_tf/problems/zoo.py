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
