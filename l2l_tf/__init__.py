"""l2l_tf: learned optimizers for TensorFlow/Keras.

Andrychowicz et al. 2016, "Learning to learn by gradient descent by gradient
descent" (arXiv:1606.04474): a coordinatewise LSTM, meta-trained on a family
of optimizees, used as a drop-in Keras optimizer::

    from l2l_tf import LearnedOptimizer
    model.compile(optimizer=LearnedOptimizer(), loss=...)
"""

__version__ = "0.1.0"
