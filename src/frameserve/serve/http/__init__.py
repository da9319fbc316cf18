"""The HTTP front door: HTTP/1.1 on blocking sockets and the Open Inference Protocol v2.

Routes (inference, training) are given to the door when it is built; ``status`` maps errors.
"""
