"""The FAISS index of every video: Ray Data embedding (`embed`), building (`build`), the index
folder and its manifest (`store`), and search over it (`retriever`)."""
