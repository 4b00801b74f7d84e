import numpy as np, fastseq, pickle, warnings
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
n=120
X=[rng.standard_normal((int(rng.integers(12,30)),2)).astype("float32") for _ in range(n)]
y=np.array([i%2 for i in range(n)])
for x,l in zip(X,y): x[:, 0] += 2*l-1
clf=fastseq.RNNClassifier(hidden_size=8, conv_filters=(6,5), conv_pool=2, max_iter=5, random_state=0, cell="gru")
clf.fit(X,y); print(clf.score(X,y)); clf.summary()
clf2=pickle.loads(pickle.dumps(clf)); print((clf2.predict_proba(X)==clf.predict_proba(X)).all())
clf.save("/tmp/c.npz"); c3=fastseq.load("/tmp/c.npz"); print((c3.predict_proba(X)==clf.predict_proba(X)).all(), c3.conv_filters)
t=fastseq.SequenceTagger(hidden_size=8, conv_filters=4, max_iter=3).fit(X,[np.full(len(x), l) for x,l in zip(X,y)]); t.summary()
print(len(t.predict(X[:3])[0]), len(X[0]))
