"""The HTTP front of digitq: takes uploads, hands them to the queue, serves job state and results.

It never imports scikit-learn (or anything in ml/): the workers do the model work.
"""
