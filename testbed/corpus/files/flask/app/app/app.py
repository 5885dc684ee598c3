# A one-route Flask app on 127.0.0.1:5000 (the Werkzeug development server).
from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/")
def hello():
    return jsonify(message="hello from flask")


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000)
