import flask

application: flask.Flask = flask.Flask(__name__)
