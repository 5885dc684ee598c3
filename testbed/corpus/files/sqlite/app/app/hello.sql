CREATE TABLE greeting (id INTEGER PRIMARY KEY, word TEXT);
INSERT INTO greeting (word) VALUES ('hello'), ('from'), ('sqlite');
SELECT group_concat(word, ' ') FROM (SELECT word FROM greeting ORDER BY id);
